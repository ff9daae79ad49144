-- Rows no extract window can hold (CONTRACT §2 columns): `updated_at` missing, before the
-- first window (1970), or, where the column is text (SQLite), not an instant at all (such
-- text sorts after every date). The extract reports them in rejected_invoices instead of
-- skipping them silently; adapt it together with extract_invoices.sql. `updated_at` is read
-- as text, so that a value the driver cannot turn into a datetime is still reported.
SELECT invoice_id, org_id, customer_id, number, issue_date, due_date, currency,
       total_amount, status, pdf_path, CAST(updated_at AS TEXT) AS updated_at
FROM invoices
WHERE updated_at IS NULL OR updated_at < :floor OR updated_at > :ceiling
ORDER BY invoice_id
