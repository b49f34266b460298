"""Evaluation of frozen backbones: feature extraction and k-NN classification."""

from sslkd.eval.features import extract_features
from sslkd.eval.knn import dogo_knn_mean, knn_accuracy, knn_predict, knn_predict_torch

__all__ = ["extract_features", "knn_predict", "knn_predict_torch", "knn_accuracy", "dogo_knn_mean"]
