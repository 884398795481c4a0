"""What ONNX converters build with (``context``), the in-graph channel summaries and the PriorBox geometry.

The converters themselves live with their layer types in ``caffe_surgery.layers`` (the ``export`` facet).
"""
