"""Commands: `lda study`, `explore`, `mine` and `monitor`, and the workflows they run."""
