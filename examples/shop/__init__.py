"""perfkit's example service: a catalogue API and a chat endpoint, every capability at work.

Run it: ``python -m examples.shop`` (uvicorn on 127.0.0.1:8000), or test it with
``python -m pytest examples/tests --perf-budget --perf-report=perf-report.html``.
"""
