graph fused(%x: f32[N,4], %r: f32[N,6]) -> (f32[N,6], f32[6,N]) {
  %w = const[sha="530795ab22b11cbe"] : f32[4,6]
  %b = const[value=[[-0.5, -0.5, -0.5, -0.5, -0.5, -0.5]]] : f32[1,6]
  %0 = dense[act=leaky_relu, alpha=0.2, post=(add, gelu), tile=(mc=64, nc=128, kc=256, mr=4, nr=8, parallel=n, pack=false)](%x, %w, %b, %r) : f32[N,6]
  %1 = transpose(%0) : f32[6,N]
  %2 = gelu[approximate=tanh](%1) : f32[6,N]
  %3 = log_softmax[axis=0](%2) : f32[6,N]
  return %0, %3
}
