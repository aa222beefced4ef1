// one row: the work is split over n and nothing is packed; a 1x10x10 layer is too small to
// repay a parallel region
graph small(%x: f32[1,512], %w0: f32[512,2048], %b0: f32[2048], %w1: f32[2048,10], %b1: f32[10], %y: f32[1,10], %w2: f32[10,10]) -> (f32[1,10], f32[1,10]) {
  %0 = dense[act=relu](%x, %w0, %b0) : f32[1,2048]
  %1 = dense(%0, %w1, %b1) : f32[1,10]
  %2 = dense[bias=false, act=sigmoid](%y, %w2) : f32[1,10]
  return %1, %2
}
// ---- expected after: tile{machine=generic}
graph small(%x: f32[1,512], %w0: f32[512,2048], %b0: f32[2048], %w1: f32[2048,10], %b1: f32[10], %y: f32[1,10], %w2: f32[10,10]) -> (f32[1,10], f32[1,10]) {
  %0 = dense[act=relu, tile=(mc=6, nc=256, kc=512, mr=6, nr=16, parallel=n, pack=true)](%x, %w0, %b0) : f32[1,2048]
  %1 = dense[tile=(mc=6, nc=16, kc=2048, mr=6, nr=16, parallel="none", pack=true)](%0, %w1, %b1) : f32[1,10]
  %2 = dense[act=sigmoid, bias=false, tile=(mc=6, nc=16, kc=10, mr=6, nr=16, parallel="none", pack=true)](%y, %w2) : f32[1,10]
  return %1, %2
}
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] chosen (model) %0 = dense[act=relu](%x, %w0, %b0) : f32[1,2048]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=512: a 512x16 B micro-panel (32 KiB) fits a quarter of the 512 KiB L2 (all of k=512: one k block, the output written once); mc=6: the 6x512 A block (12 KiB) fits half the 512 KiB L2 (all of m=1, rounded up to a multiple of mr=6); nc=256: n=2048 split over 8 cores (L3 allows 2048); parallel=n: 4 MiB of weights to read ≈ 83.9 µs on one core; the batch is small (m=1), so 8 cores share the 128 column tiles of 16; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [tile] chosen (model) %1 = dense(%0, %w1, %b1) : f32[1,10]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=2048: a 2048x16 B micro-panel (128 KiB) fits a quarter of the 512 KiB L2 (all of k=2048: one k block, the output written once); mc=6: the 6x2048 A block (48 KiB) fits half the 512 KiB L2 (all of m=1, rounded up to a multiple of mr=6); nc=16: the 2048x16 B panel (128 KiB) fits half the 8 MiB L3 (all of n=10, rounded up to a multiple of nr=16); parallel=none: 80 KiB of weights to read ≈ 1.64 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
// decision: [tile] chosen (model) %2 = dense[act=sigmoid, bias=false](%y, %w2) : f32[1,10]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=10: a 10x16 B micro-panel (640 B) fits a quarter of the 512 KiB L2 (all of k=10: one k block, the output written once); mc=6: the 6x10 A block (240 B) fits half the 512 KiB L2 (all of m=1, rounded up to a multiple of mr=6); nc=16: the 10x16 B panel (640 B) fits half the 8 MiB L3 (all of n=10, rounded up to a multiple of nr=16); parallel=none: 400 B of weights to read ≈ 0.008 µs on one core, below the 10 µs a parallel region needs to repay its start-up; pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
