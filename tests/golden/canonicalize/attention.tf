// scaled dot-product attention as a hand-written block exports it: q @ kᵀ (kᵀ a permute of
// the heads' layout), divided by √d, an additive mask, softmax over the keys, @ v
graph f(%q: f32[N,4,8,16], %kh: f32[N,8,4,16], %v: f32[N,4,8,16], %mask: f32[8,8]) -> f32[N,4,8,16] {
  %sqrt_d = const[value=4.0] : f32[]
  %0 = permute[perm=(0, 2, 3, 1)](%kh) : f32[N,4,16,8]
  %1 = batch_matmul(%q, %0) : f32[N,4,8,8]
  %2 = div(%1, %sqrt_d) : f32[N,4,8,8]
  %3 = add(%2, %mask) : f32[N,4,8,8]
  %4 = softmax[axis=3](%3) : f32[N,4,8,8]
  %5 = batch_matmul(%4, %v) : f32[N,4,8,16]
  return %5
}
// ---- expected after: canonicalize
graph f(%q: f32[N,4,8,16], %kh: f32[N,8,4,16], %v: f32[N,4,8,16], %mask: f32[8,8]) -> f32[N,4,8,16] {
  %0 = permute[perm=(0, 2, 1, 3)](%kh) : f32[N,4,8,16]
  %1 = attention[scale=0.25](%q, %0, %v, %mask) : f32[N,4,8,16]
  return %1
}
// decision: [canonicalize] applied (attention) %5 = batch_matmul(%4, %v) : f32[N,4,8,16]: softmax(q @ kᵀ * scale + mask) @ v is scaled dot-product attention: one op, whose kernels keep one block of scores per query (online softmax), never the T x T matrix
