"""Block jobs and the copy engine they share."""
