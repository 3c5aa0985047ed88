"""Operations: metrics, drift, the prediction log, feedback, health."""
