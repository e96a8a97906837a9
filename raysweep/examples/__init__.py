"""Shipped examples of models and data sets named by import path (``experiment.model.factory``,
``experiment.factory``): they import offline, on the driver and on any Ray worker, since they travel with raysweep.

- :mod:`raysweep.examples.cnn`: a small CNN (``build``) and sklearn's bundled digits as 1 x 8 x 8 images
  (``digits_images``); ``search_spaces/custom_cnn_digits.yaml``;
- :mod:`raysweep.examples.transformer`: a decoder-only transformer (``build``; muP attention scale ``1 / d_head``)
  and a random Markov-chain language made on the fly (``markov_language``); ``search_spaces/custom_transformer.yaml``.
"""
