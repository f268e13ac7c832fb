"""Examples that ship with pipeline-db: demo stage handlers (:mod:`examples.demo_handlers`)."""
