// nn.MultiheadAttention as exported with batch_first: x [N,6,8] transposed to [6,N,8], one
// QKV projection, heads, attention, heads back, the output projection, transposed back, the
// residual. The transposes move into the views of q, k, v and of attention's result, and
// attention's two permutes compose into one
graph mha(%x: f32[N,6,8], %w_in: f32[8,24], %b_in: f32[24], %w_out: f32[8,8], %b_out: f32[8]) -> f32[N,6,8] {
  %0 = permute[perm=(1, 0, 2)](%x) : f32[6,N,8]
  %1 = matmul(%0, %w_in) : f32[6,N,24]
  %2 = add(%b_in, %1) : f32[6,N,24]
  %3 = reshape[shape=(6, N, 3, 2, 4)](%2) : f32[6,N,3,2,4]
  %4 = slice[axis=2, start=0, stop=1](%3) : f32[6,N,1,2,4]
  %5 = reshape[shape=(6, N, 2, 4)](%4) : f32[6,N,2,4]
  %6 = permute[perm=(1, 2, 0, 3)](%5) : f32[N,2,6,4]
  %7 = slice[axis=2, start=1, stop=2](%3) : f32[6,N,1,2,4]
  %8 = reshape[shape=(6, N, 2, 4)](%7) : f32[6,N,2,4]
  %9 = permute[perm=(1, 2, 0, 3)](%8) : f32[N,2,6,4]
  %10 = slice[axis=2, start=2, stop=3](%3) : f32[6,N,1,2,4]
  %11 = reshape[shape=(6, N, 2, 4)](%10) : f32[6,N,2,4]
  %12 = permute[perm=(1, 2, 0, 3)](%11) : f32[N,2,6,4]
  %13 = attention[scale=0.5](%6, %9, %12) : f32[N,2,6,4]
  %14 = permute[perm=(2, 0, 1, 3)](%13) : f32[6,N,2,4]
  %15 = reshape[shape=(6, N, 8)](%14) : f32[6,N,8]
  %16 = matmul(%15, %w_out) : f32[6,N,8]
  %17 = add(%16, %b_out) : f32[6,N,8]
  %18 = permute[perm=(1, 0, 2)](%17) : f32[N,6,8]
  %19 = add(%x, %18) : f32[N,6,8]
  return %19
}
// ---- expected after: canonicalize,fuse
graph mha(%x: f32[N,6,8], %w_in: f32[8,24], %b_in: f32[24], %w_out: f32[8,8], %b_out: f32[8]) -> f32[N,6,8] {
  %0 = dense(%x, %w_in, %b_in) : f32[N,6,24]
  %1 = permute[perm=(1, 0, 2)](%0) : f32[6,N,24]
  %2 = reshape[shape=(6, N, 3, 2, 4)](%1) : f32[6,N,3,2,4]
  %3 = slice[axis=2, start=0, stop=1](%2) : f32[6,N,1,2,4]
  %4 = reshape[shape=(6, N, 2, 4)](%3) : f32[6,N,2,4]
  %5 = permute[perm=(1, 2, 0, 3)](%4) : f32[N,2,6,4]
  %6 = slice[axis=2, start=1, stop=2](%2) : f32[6,N,1,2,4]
  %7 = reshape[shape=(6, N, 2, 4)](%6) : f32[6,N,2,4]
  %8 = permute[perm=(1, 2, 0, 3)](%7) : f32[N,2,6,4]
  %9 = slice[axis=2, start=2, stop=3](%2) : f32[6,N,1,2,4]
  %10 = reshape[shape=(6, N, 2, 4)](%9) : f32[6,N,2,4]
  %11 = permute[perm=(1, 2, 0, 3)](%10) : f32[N,2,6,4]
  %12 = attention[scale=0.5](%5, %8, %11) : f32[N,2,6,4]
  %13 = permute[perm=(0, 2, 1, 3)](%12) : f32[N,6,2,4]
  %14 = reshape[shape=(N, 6, 8)](%13) : f32[N,6,8]
  %15 = dense[post=(add)](%14, %w_out, %b_out, %x) : f32[N,6,8]
  return %15
}
// decision: [canonicalize] applied (permute_after_projection) %2 = add(%b_in, %1) : f32[6,N,24]: a projection of permuted rows is the projection, permuted: the permute joins the views through which attention reads q, k and v
// decision: [canonicalize] applied (permute_before_projection) %18 = permute[perm=(1, 0, 2)](%17) : f32[N,6,8]: the rows of an attention result are permuted before the projection instead of after it: the permute meets attention's own and they compose into one that attention writes through, and the residual add can join the projection
// decision: [canonicalize] applied (permute_of_reshape) %16 = permute[perm=(1, 0, 2)](%15) : f32[N,6,8]: the permute moves axes the reshape keeps: it runs first, so it can meet the permute that made its operand
// decision: [canonicalize] applied (permute_of_permute) %15 = permute[perm=(1, 0, 2, 3)](%14) : f32[N,6,2,4]: two permutes in a row are one (none when they undo each other)
// decision: [fuse] fused (fused) %0 = dense(%x, %w_in, %b_in) : f32[N,6,24]: matmul + bias add run as one dense kernel; the weight %w_in is a runtime value, not a constant (allowed, but it cannot be packed at compile time)
// decision: [fuse] fused (fused) %15 = dense[post=(add)](%14, %w_out, %b_out, %x) : f32[N,6,8]: matmul + bias add + epilogue (add) run as one dense kernel; the weight %w_out is a runtime value, not a constant (allowed, but it cannot be packed at compile time)
