graph seed_layer(%x: f64[N,2]) -> f64[N,2] {
  %w = const[value=[[1.2, -3.0], [1.5, 4.0]]] : f64[2,2]
  %b = const[value=[[0.5, -0.5]]] : f64[1,2]
  %0 = matmul(%x, %w) : f64[N,2]
  %1 = add(%0, %b) : f64[N,2]
  %2 = sigmoid(%1) : f64[N,2]
  return %2
}
