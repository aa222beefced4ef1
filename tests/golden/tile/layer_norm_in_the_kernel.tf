// the CPU kernel runs a residual add and a layer norm of the rows last: nc covers a row
// whole (each task holds whole rows); a layer norm after an add that is no residual (it
// broadcasts) moves out with that add
graph block(%x: f32[N,3], %w: f32[3,40], %r: f32[N,40], %c: f32[40], %s: f32[40], %t: f32[40]) -> (f32[N,40], f32[N,40]) {
  %0 = dense[act=gelu, bias=false, post=(add, layer_norm)](%x, %w, %r, %s, %t) : f32[N,40]
  %1 = dense[bias=false, epsilon=0.001, post=(add, layer_norm)](%x, %w, %c, %s, %t) : f32[N,40]
  return %0, %1
}
// ---- expected after: tile{machine=generic}
graph block(%x: f32[N,3], %w: f32[3,40], %r: f32[N,40], %c: f32[40], %s: f32[40], %t: f32[40]) -> (f32[N,40], f32[N,40]) {
  %0 = dense[act=gelu, bias=false, post=(add, layer_norm), tile=(mc=258, nc=48, kc=3, mr=6, nr=16, parallel="none", pack=true)](%x, %w, %r, %s, %t) : f32[N,40]
  %1 = dense[bias=false, tile=(mc=258, nc=48, kc=3, mr=6, nr=16, parallel="none", pack=true)](%x, %w) : f32[N,40]
  %2 = add(%1, %c) : f32[N,40]
  %3 = layer_norm[epsilon=0.001](%2, %s, %t) : f32[N,40]
  return %0, %3
}
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] split (epilogue_split) %1 = dense[bias=false, epsilon=0.001, post=(add, layer_norm)](%x, %w, %c, %s, %t) : f32[N,40]: add, layer_norm run as ops of their own after the kernel: its epilogue runs a row bias and one of identity, relu, leaky_relu, sigmoid, tanh, gelu in registers, then an add of an operand of the output's type, then a layer norm of the rows
// decision: [tile] chosen (model) %0 = dense[act=gelu, bias=false, post=(add, layer_norm)](%x, %w, %r, %s, %t) : f32[N,40]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once); mc=258: the 258x3 A block (3.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6); nc=48: the 3x48 B panel (576 B) fits half the 8 MiB L3 (all of n=40, rounded up to a multiple of nr=16); parallel=none: 61,440 flops ≈ 1.28 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [tile] chosen (model) %1 = dense[bias=false](%x, %w) : f32[N,40]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once); mc=258: the 258x3 A block (3.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6); nc=48: the 3x48 B panel (576 B) fits half the 8 MiB L3 (all of n=40, rounded up to a multiple of nr=16); parallel=none: 61,440 flops ≈ 1.28 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
