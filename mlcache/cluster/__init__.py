"""What is in the live cluster: reading a stack's objects, judging them (diagnosis, workers), the
bound-cache guard, heal and drift."""
