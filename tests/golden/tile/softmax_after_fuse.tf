// the whole front half of the pipeline: fused, then tiled; a softmax epilogue needs whole
// rows, which the tiling does not change (backends run it after the loops)
graph head(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [1.5, -0.5]]] : f32[3,2]
  %b = const[value=[0.1, -0.2]] : f32[2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = softmax(%1) : f32[N,2]
  return %2
}
// ---- expected after: canonicalize,fuse,tile{machine=generic,batch=64}
graph head(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [1.5, -0.5]]] : f32[3,2]
  %b = const[value=[0.1, -0.2]] : f32[2]
  %0 = dense[tile=(mc=66, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true)](%x, %w, %b) : f32[N,2]
  %1 = softmax(%0) : f32[N,2]
  return %1
}
// decision: [fuse] fused (unsupported_activation) %0 = dense(%x, %w, %b) : f32[N,2]: matmul + bias add run as one dense kernel; the next op stays outside: softmax is not elementwise (it normalizes along an axis), so it runs as its own kernel after the dense; only elementwise activations fuse
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] chosen (model) %0 = dense(%x, %w, %b) : f32[N,2]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once); mc=66: the 66x3 A block (792 B) fits half the 512 KiB L2 (all of m=N (planned as 64), rounded up to a multiple of mr=6); nc=16: the 3x16 B panel (192 B) fits half the 8 MiB L3 (all of n=2, rounded up to a multiple of nr=16); parallel=none: 768 flops ≈ 0.016 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
