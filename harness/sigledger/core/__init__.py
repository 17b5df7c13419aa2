"""Infrastructure every domain uses: the connection pool, errors, paths, the local cluster, metrics."""
