// the default pipeline (with the generic machine): fused, tiled, then planned
graph mlp(%x: f32[N,3]) -> f32[N,2] {
  %w0 = const[value=[[0.5, -1.0, 0.25], [0.25, 0.75, -0.5], [1.5, -0.5, 1.0]]] : f32[3,3]
  %b0 = const[value=[0.1, -0.2, 0.3]] : f32[3]
  %w1 = const[value=[[1.0, -1.0, 0.5], [0.5, 0.25, -0.75], [-0.25, 1.0, 0.5]]] : f32[3,3]
  %w2 = const[value=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]] : f32[3,2]
  %0 = matmul(%x, %w0) : f32[N,3]
  %1 = add(%0, %b0) : f32[N,3]
  %2 = tanh(%1) : f32[N,3]
  %3 = matmul(%2, %w1) : f32[N,3]
  %4 = relu(%3) : f32[N,3]
  %5 = matmul(%4, %w2) : f32[N,2]
  return %5
}
// ---- expected after: canonicalize,fuse,tile{machine=generic},plan_memory
graph mlp(%x: f32[N,3]) -> f32[N,2] {
  %w0 = const[value=[[0.5, -1.0, 0.25], [0.25, 0.75, -0.5], [1.5, -0.5, 1.0]]] : f32[3,3]
  %b0 = const[value=[0.1, -0.2, 0.3]] : f32[3]
  %w1 = const[value=[[1.0, -1.0, 0.5], [0.5, 0.25, -0.75], [-0.25, 1.0, 0.5]]] : f32[3,3]
  %w2 = const[value=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]] : f32[3,2]
  %0 = dense[act=tanh, tile=(mc=258, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true)](%x, %w0, %b0) : f32[N,3] in ws0
  %1 = dense[act=relu, bias=false, tile=(mc=258, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true)](%0, %w1) : f32[N,3] in ws1
  %2 = dense[bias=false, tile=(mc=258, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true)](%1, %w2) : f32[N,2]
  return %2
}
// decision: [fuse] fused (fused) %0 = dense[act=tanh](%x, %w0, %b0) : f32[N,3]: matmul + bias add + tanh run as one dense kernel
// decision: [fuse] fused (fused) %1 = dense[act=relu, bias=false](%0, %w1) : f32[N,3]: matmul + relu run as one dense kernel
// decision: [fuse] not_fused (no_epilogue) %2 = dense[bias=false](%1, %w2) : f32[N,2]: the matmul runs alone as dense[bias=false]; no bias add or elementwise op follows it
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] chosen (model) %0 = dense[act=tanh](%x, %w0, %b0) : f32[N,3]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once); mc=258: the 258x3 A block (3.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6); nc=16: the 3x16 B panel (192 B) fits half the 8 MiB L3 (all of n=3, rounded up to a multiple of nr=16); parallel=none: 4,608 flops ≈ 0.096 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [tile] chosen (model) %1 = dense[act=relu, bias=false](%0, %w1) : f32[N,3]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once); mc=258: the 258x3 A block (3.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6); nc=16: the 3x16 B panel (192 B) fits half the 8 MiB L3 (all of n=3, rounded up to a multiple of nr=16); parallel=none: 4,608 flops ≈ 0.096 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [tile] chosen (model) %2 = dense[bias=false](%1, %w2) : f32[N,2]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once); mc=258: the 258x3 A block (3.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6); nc=16: the 3x16 B panel (192 B) fits half the 8 MiB L3 (all of n=2, rounded up to a multiple of nr=16); parallel=none: 3,072 flops ≈ 0.064 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [plan_memory] planned (liveness) mlp: 2 buffers (6*N elements) for 2 intermediates; in place: no
// decision: [plan_memory] planned (buffer) buffer 0: f32[3*N]: holds %0
// decision: [plan_memory] planned (buffer) buffer 1: f32[3*N]: holds %1
