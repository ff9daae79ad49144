-- The accounting extract (CONTRACT §2): invoices changed in the window [since, until].
-- Adapt the FROM/WHERE to your accounting system; keep the column names.
-- The bounds since and until are UTC instants; `updated_at` is stored as naive UTC.
-- Keep the order by invoice_id: the extract reads the window in chunks, and the rows of
-- one invoice (an adapted query may repeat it) must come together.
SELECT invoice_id, org_id, customer_id, number, issue_date, due_date, currency,
       total_amount, status, pdf_path, updated_at
FROM invoices
WHERE updated_at >= :since AND updated_at <= :until
ORDER BY invoice_id
