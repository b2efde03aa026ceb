"""The closed-loop demo of ``deploy/tributary up``: a credit-default data generator and the run's timeline."""
