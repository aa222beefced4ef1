// PyTorch's scaled_dot_product_attention exported: q and kᵀ each multiplied by √scale
// (nn.MultiheadAttention's heads as [N, 4, T, d]), no mask
graph f(%q: f32[N,4,8,16], %k: f32[N,4,8,16], %v: f32[N,4,8,16]) -> f32[N,4,8,16] {
  %root_scale = const[value=0.5] : f32[]
  %0 = permute[perm=(0, 1, 3, 2)](%k) : f32[N,4,16,8]
  %1 = mul(%q, %root_scale) : f32[N,4,8,16]
  %2 = mul(%0, %root_scale) : f32[N,4,16,8]
  %3 = batch_matmul(%1, %2) : f32[N,4,8,8]
  %4 = softmax[axis=-1](%3) : f32[N,4,8,8]
  %5 = batch_matmul(%4, %v) : f32[N,4,8,16]
  return %5
}
// ---- expected after: canonicalize
graph f(%q: f32[N,4,8,16], %k: f32[N,4,8,16], %v: f32[N,4,8,16]) -> f32[N,4,8,16] {
  %0 = attention[scale=0.25](%q, %k, %v) : f32[N,4,8,16]
  return %0
}
// decision: [canonicalize] applied (attention) %5 = batch_matmul(%4, %v) : f32[N,4,8,16]: softmax(q @ kᵀ * scale + mask) @ v is scaled dot-product attention: one op, whose kernels keep one block of scores per query (online softmax), never the T x T matrix
