"""Evaluation of pre-trained models and segmentations."""
