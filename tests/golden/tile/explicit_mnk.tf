// m, n, k given in the spec are used as they are (64 is not a multiple of mr=6: ragged
// micro-tiles at each block's edge); the micro-tile, parallel loop and packing are chosen
graph layer(%x: f32[N,784], %w: f32[784,512], %b: f32[512]) -> f32[N,512] {
  %0 = dense[act=gelu](%x, %w, %b) : f32[N,512]
  return %0
}
// ---- expected after: tile{m=64,n=128,k=256,machine=generic}
graph layer(%x: f32[N,784], %w: f32[784,512], %b: f32[512]) -> f32[N,512] {
  %0 = dense[act=gelu, tile=(mc=64, nc=128, kc=256, mr=6, nr=16, parallel=m, pack=true)](%x, %w, %b) : f32[N,512]
  return %0
}
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] chosen (user_spec) %0 = dense[act=gelu](%x, %w, %b) : f32[N,512]: mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers; kc=256 (given by the spec); mc=64 (given by the spec); nc=128 (given by the spec); parallel=m: 205,520,896 flops ≈ 4.28 ms on one core; m=N (planned as 256) rows give each of 8 cores at least 12 (two micro-tile rows); pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
