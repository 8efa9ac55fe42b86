"""What the tests share: assertions about stored rows, real servers they start (Celery
workers, pgbouncer, an S3 server, a TCP proxy), the application's old models, the hostile corpus."""
