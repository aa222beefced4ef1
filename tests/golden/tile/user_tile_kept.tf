// a dense that already has a tile keeps it (it must be one the CPU kernels run: their register
// tile, packed); the spec's options apply to the others only
graph two(%x: f32[N,64], %w0: f32[64,64], %w1: f32[64,32]) -> f32[N,32] {
  %0 = dense[bias=false, act=tanh, tile=(mc=7, nc=5, kc=3, mr=6, nr=16, parallel="none", pack=true)](%x, %w0) : f32[N,64]
  %1 = dense[bias=false](%0, %w1) : f32[N,32]
  return %1
}
// ---- expected after: tile{k=32,machine=generic}
graph two(%x: f32[N,64], %w0: f32[64,64], %w1: f32[64,32]) -> f32[N,32] {
  %0 = dense[act=tanh, bias=false, tile=(mc=7, nc=5, kc=3, mr=6, nr=16, parallel="none", pack=true)](%x, %w0) : f32[N,64]
  %1 = dense[bias=false, tile=(mc=36, nc=32, kc=32, mr=6, nr=16, parallel=m, pack=true)](%0, %w1) : f32[N,32]
  return %1
}
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] kept (user_node) %0 = dense[act=tanh, bias=false, tile=(mc=7, nc=5, kc=3, mr=6, nr=16, parallel="none", pack=true)](%x, %w0) : f32[N,64]: given by the user: (mc=7, nc=5, kc=3, mr=6, nr=16, parallel="none", pack=true); kept as it is; warning: the given tiling is estimated 234x slower than the model's (mc=36, nc=64, kc=64, mr=6, nr=16, parallel=m, pack=true): mostly packing x (3.3 M cycles a core against 0.0042 M)
// decision: [tile] chosen (user_spec) %1 = dense[bias=false](%0, %w1) : f32[N,32]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=32 (given by the spec); mc=36: m=N (planned as 256) split over 8 cores (L2 allows 2046); nc=32: the 32x32 B panel (4 KiB) fits half the 8 MiB L3 (all of n=32, rounded up to a multiple of nr=16); parallel=m: 1,048,576 flops ≈ 21.8 µs on one core; m=N (planned as 256) rows give each of 8 cores at least 12 (two micro-tile rows); pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
