"""The ONNX importer's implementation (the public entry point is :mod:`fastcert.io.onnx_import`):
``read`` (files, attributes, the graph input), ``fold`` (constant subgraphs), ``values`` (one record
per tensor computed from the input), ``convert`` (the graph walk), ``registry`` and the handlers
``ops_tensor`` (elementwise, activations, Cast, reshapes, Transpose), ``ops_layers`` (Gemm, MatMul,
Conv, pooling) and ``ops_graph`` (Add / Sub / Sum of two tensors, Concat)."""
