// the cache model on the generic machine (32 KiB L1d, 512 KiB L2, 8 MiB L3, AVX2, 8 cores);
// machine=generic keeps the golden independent of the host that runs it
graph mlp(%x: f32[N,784], %w0: f32[784,512], %b0: f32[512], %w1: f32[512,512], %b1: f32[512], %w2: f32[512,10], %b2: f32[10]) -> f32[N,10] {
  %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512]
  %1 = dense[act=relu](%0, %w1, %b1) : f32[N,512]
  %2 = dense(%1, %w2, %b2) : f32[N,10]
  return %2
}
// ---- expected after: tile{machine=generic}
graph mlp(%x: f32[N,784], %w0: f32[784,512], %b0: f32[512], %w1: f32[512,512], %b1: f32[512], %w2: f32[512,10], %b2: f32[10]) -> f32[N,10] {
  %0 = dense[act=relu, tile=(mc=36, nc=512, kc=784, mr=6, nr=16, parallel=m, pack=true)](%x, %w0, %b0) : f32[N,512]
  %1 = dense[act=relu, tile=(mc=36, nc=512, kc=512, mr=6, nr=16, parallel=m, pack=true)](%0, %w1, %b1) : f32[N,512]
  %2 = dense[tile=(mc=36, nc=16, kc=512, mr=6, nr=16, parallel=m, pack=true)](%1, %w2, %b2) : f32[N,10]
  return %2
}
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] chosen (model) %0 = dense[act=relu](%x, %w0, %b0) : f32[N,512]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=784: a 784x16 B micro-panel (49 KiB) fits a quarter of the 512 KiB L2 (all of k=784: one k block, the output written once); mc=36: m=N (planned as 256) split over 8 cores (L2 allows 78); nc=512: the 784x512 B panel (1.5 MiB) fits half the 8 MiB L3 (all of n=512, rounded up to a multiple of nr=16); parallel=m: 205,520,896 flops ≈ 4.28 ms on one core; m=N (planned as 256) rows give each of 8 cores at least 12 (two micro-tile rows); pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [tile] chosen (model) %1 = dense[act=relu](%0, %w1, %b1) : f32[N,512]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=512: a 512x16 B micro-panel (32 KiB) fits a quarter of the 512 KiB L2 (all of k=512: one k block, the output written once); mc=36: m=N (planned as 256) split over 8 cores (L2 allows 126); nc=512: the 512x512 B panel (1 MiB) fits half the 8 MiB L3 (all of n=512, rounded up to a multiple of nr=16); parallel=m: 134,217,728 flops ≈ 2.8 ms on one core; m=N (planned as 256) rows give each of 8 cores at least 12 (two micro-tile rows); pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [tile] chosen (model) %2 = dense(%1, %w2, %b2) : f32[N,10]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=512: a 512x16 B micro-panel (32 KiB) fits a quarter of the 512 KiB L2 (all of k=512: one k block, the output written once); mc=36: m=N (planned as 256) split over 8 cores (L2 allows 126); nc=16: the 512x16 B panel (32 KiB) fits half the 8 MiB L3 (all of n=10, rounded up to a multiple of nr=16); parallel=m: 2,621,440 flops ≈ 54.6 µs on one core; m=N (planned as 256) rows give each of 8 cores at least 12 (two micro-tile rows); pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
