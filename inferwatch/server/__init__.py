"""The reference model server: PyTorch models behind dynamic batching, instrumented end to end.

``inferwatch serve`` runs it. The modules: ``models`` (the networks and their batch runners),
``versions`` (each classifier's versions: fp32, int8, ONNX Runtime), ``protocol`` (request
parsing and response building for each HTTP protocol), ``app`` (the aiohttp application) and
``cli`` (the command). Everything here imports torch; nothing outside this package imports it.
"""
