-- Re-check at send time (SPEC B5): the invoice as the accounting system has it now.
-- A missing row means the invoice was deleted.
SELECT invoice_id, status, pdf_path
FROM invoices
WHERE invoice_id IN :invoice_ids
