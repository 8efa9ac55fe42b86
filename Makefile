# Thin aliases for dev.py, which needs only Python 3.11+.
.PHONY: demo test check bench
demo:
	python3 dev.py demo
test:
	python3 dev.py test
check:
	python3 dev.py check
bench:
	python3 dev.py bench
