"""invoice-dispatch: send invoices by e-mail, letter or SMS, exactly once, from a batch pipeline.

The package is the library the Airflow DAG and the ``dispatch`` command line both call: one
module per stage of a run (extract, tag, resolve templates, compute due, dispatch, write back)
plus the people's operations on the to-do list.
"""

__version__ = "0.1.0"
