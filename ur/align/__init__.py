"""Alignment of vision models with preference pairs built by the judge: DPO for
vision-language models (image and video understanding) and Diffusion-DPO for
text-to-image and text-to-video generators.

The pairs come from disk; this package imports neither ``construct`` nor ``reward``.
"""
