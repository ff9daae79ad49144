"""One router per resource: the to-do list, the invoices (list and one), the runs, the JSON API."""
