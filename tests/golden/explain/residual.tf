// A block with three things explain must tell apart: a layer that fuses fully (%0..%2), a
// layer whose result is read twice (multi_use stops its epilogue), and a softmax, which
// needs whole rows (unsupported_activation) after a matmul that stays bare.
graph block(%x: f32[N,4]) -> f32[N,2] {
  %w0 = const[value=[[0.5, -0.25, 0.125], [0.75, 0.5, -1.0], [-0.5, 0.25, 1.0], [1.0, -0.75, 0.5]]] : f32[4,3]
  %b0 = const[value=[0.1, -0.2, 0.3]] : f32[3]
  %w1 = const[value=[[0.5, -1.0, 0.25], [0.75, 0.5, -0.5], [-0.25, 1.0, 0.125]]] : f32[3,3]
  %b1 = const[value=[0.05, 0.0, -0.05]] : f32[3]
  %w2 = const[value=[[1.0, -1.0], [0.5, 0.25], [-0.75, 0.5]]] : f32[3,2]
  %0 = matmul(%x, %w0) : f32[N,3]
  %1 = add(%0, %b0) : f32[N,3]
  %2 = relu(%1) : f32[N,3]
  %3 = matmul(%2, %w1) : f32[N,3]
  %4 = add(%3, %b1) : f32[N,3]
  %5 = tanh(%4) : f32[N,3]
  %6 = sub(%5, %4) : f32[N,3]
  %7 = matmul(%6, %w2) : f32[N,2]
  %8 = softmax(%7) : f32[N,2]
  return %8
}
// ---- expected: tilefuse explain
explain block: pipeline canonicalize,fuse,tile,plan_memory, f32, costs at N=256
machine   generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic)
roofline  peak 100 GFLOP/s, bandwidth 20 GB/s, ridge 5 flops/byte (TILEFUSE_PEAK_GFLOPS, TILEFUSE_PEAK_GBPS)

op     kernel              flops     bytes  flops/byte  GFLOP/s max  bound
%0     dense[act=relu]     7,680   7.1 KiB        1.06        21.25  memory
%1     dense               5,376   6.0 KiB       0.868        17.36  memory
%2     tanh                3,072     6 KiB         0.5           10  memory
%3     sub                   768     9 KiB      0.0833        1.667  memory
%4     dense[bias=false]   3,072   5.0 KiB       0.597        11.94  memory
%5     softmax             2,560     4 KiB       0.625         12.5  memory
total  6 kernels          22,528  37.1 KiB       0.593        11.85  memory

%0 = dense[act=relu, tile=(mc=258, nc=16, kc=4, mr=6, nr=16, parallel="none", pack=true)](%x, %w0, %b0) : f32[N,3] in ws0
  fusion    matmul + bias add + relu run as one dense kernel [fused]
  tiling    (mc=258, nc=16, kc=4, mr=6, nr=16, parallel="none", pack=true) [model]
            - mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers
            - kc=4: a 4x16 B micro-panel (256 B) fits a quarter of the 512 KiB L2 (all of k=4: one k block, the output written once)
            - mc=258: the 258x4 A block (4.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6)
            - nc=16: the 4x16 B panel (256 B) fits half the 8 MiB L3 (all of n=3, rounded up to a multiple of nr=16)
            - parallel=none: 6,144 flops ≈ 0.128 µs on one core, below the 10 µs a parallel region needs to repay its start-up
            - pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
  cost      7,680 flops, 7,228 bytes moved, 1.06 flops/byte
  roofline  memory bound: at most 21.25 GFLOP/s (21% of peak; the ridge is at 5 flops/byte)
  result    buffer 0

%1 = dense[tile=(mc=258, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true)](%0, %w1, %b1) : f32[N,3] in ws1
  fusion    matmul + bias add run as one dense kernel [multi_use]
  tiling    (mc=258, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true) [model]
            - mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers
            - kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once)
            - mc=258: the 258x3 A block (3.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6)
            - nc=16: the 3x16 B panel (192 B) fits half the 8 MiB L3 (all of n=3, rounded up to a multiple of nr=16)
            - parallel=none: 4,608 flops ≈ 0.096 µs on one core, below the 10 µs a parallel region needs to repay its start-up
            - pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
  cost      5,376 flops, 6,192 bytes moved, 0.868 flops/byte
  roofline  memory bound: at most 17.36 GFLOP/s (17% of peak; the ridge is at 5 flops/byte)
  result    buffer 1

%2 = tanh(%1) : f32[N,3] in ws0
  fusion    runs alone: it reads %1, whose fusion stopped (multi_use)
  cost      3,072 flops, 6,144 bytes moved, 0.5 flops/byte
  roofline  memory bound: at most 10 GFLOP/s (10% of peak; the ridge is at 5 flops/byte)
  result    buffer 0

%3 = sub(%2, %1) : f32[N,3] in ws2
  fusion    runs alone: it reads %1, whose fusion stopped (multi_use)
  cost      768 flops, 9,216 bytes moved, 0.0833 flops/byte
  roofline  memory bound: at most 1.667 GFLOP/s (2% of peak; the ridge is at 5 flops/byte)
  result    buffer 2

%4 = dense[bias=false, tile=(mc=258, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true)](%3, %w2) : f32[N,2] in ws0
  fusion    the matmul runs alone as dense[bias=false] [unsupported_activation]
  tiling    (mc=258, nc=16, kc=3, mr=6, nr=16, parallel="none", pack=true) [model]
            - mr x nr = 6x16: 12 accumulators of 8 f32 lanes (256-bit vectors) stay in registers
            - kc=3: a 3x16 B micro-panel (192 B) fits a quarter of the 512 KiB L2 (all of k=3: one k block, the output written once)
            - mc=258: the 258x3 A block (3.0 KiB) fits half the 512 KiB L2 (all of m=N (planned as 256), rounded up to a multiple of mr=6)
            - nc=16: the 3x16 B panel (192 B) fits half the 8 MiB L3 (all of n=2, rounded up to a multiple of nr=16)
            - parallel=none: 3,072 flops ≈ 0.064 µs on one core, below the 10 µs a parallel region needs to repay its start-up
            - pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
  cost      3,072 flops, 5,144 bytes moved, 0.597 flops/byte
  roofline  memory bound: at most 11.94 GFLOP/s (12% of peak; the ridge is at 5 flops/byte)
  result    buffer 0

%5 = softmax(%4) : f32[N,2]
  fusion    runs alone: it reads %4, whose fusion stopped (unsupported_activation)
  cost      2,560 flops, 4,096 bytes moved, 0.625 flops/byte
  roofline  memory bound: at most 12.5 GFLOP/s (12% of peak; the ridge is at 5 flops/byte)
  result    output (an array of its own)

not fused:
  %1 = dense(%0, %w1, %b1) : f32[N,3]
    why     [multi_use] matmul + bias add run as one dense kernel; the next op stays outside: its result is used 2 times (tanh, sub); an op joins the dense only when it is the only use, so the users stay separate kernels (use the value once, or repeat the layer for each user if that is cheaper)
    change  use the dense result once: each extra reader keeps the epilogue out of the kernel (when a reader only needs a cheap function of it, recompute the layer for it)
  %4 = dense[bias=false](%3, %w2) : f32[N,2]
    why     [unsupported_activation] the matmul runs alone as dense[bias=false]; the next op stays outside: softmax is not elementwise (it normalizes along an axis), so it runs as its own kernel after the dense; only elementwise activations fuse
    change  only elementwise activations (relu, sigmoid, tanh, gelu, leaky_relu) fuse into a dense; softmax and log_softmax need whole rows and stay a kernel of their own; an activation after another one must use default attributes

other decisions:
  [plan_memory] planned (liveness) block: 3 buffers (9*N elements) for 5 intermediates; in place: no
  [plan_memory] planned (buffer) buffer 0: f32[3*N]: holds %0, %2, %4
  [plan_memory] planned (buffer) buffer 1: f32[3*N]: holds %1
  [plan_memory] planned (buffer) buffer 2: f32[3*N]: holds %3

fusion: 9 ops -> 6 kernels; memory traffic 55.1 KiB -> 37.1 KiB (33% less)
