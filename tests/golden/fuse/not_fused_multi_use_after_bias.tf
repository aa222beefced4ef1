// the biased value is used twice: the bias fuses, the activation and the scale stay outside
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = matmul(%x, %w) : f32[N,2]
  %1 = add(%0, %b) : f32[N,2]
  %2 = relu(%1) : f32[N,2]
  %3 = mul(%1, %2) : f32[N,2]
  return %3
}
// ---- expected after: fuse
graph layer(%x: f32[N,3]) -> f32[N,2] {
  %w = const[value=[[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]]] : f32[3,2]
  %b = const[value=[[0.1, -0.2]]] : f32[1,2]
  %0 = dense(%x, %w, %b) : f32[N,2]
  %1 = relu(%0) : f32[N,2]
  %2 = mul(%0, %1) : f32[N,2]
  return %2
}
// decision: [fuse] fused (multi_use) %0 = dense(%x, %w, %b) : f32[N,2]: matmul + bias add run as one dense kernel; the next op stays outside: its result is used 2 times (relu, mul); an op joins the dense only when it is the only use, so the users stay separate kernels (use the value once, or repeat the layer for each user if that is cheaper)
