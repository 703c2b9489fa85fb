"""Secure aggregation protocols (pairwise masking, CKKS): issue 3. Nothing here yet; uploads travel in clear."""
