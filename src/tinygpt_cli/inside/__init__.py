"""Looking inside a trained model: attention, next-token distributions, surprise, embeddings."""
