-- The customers the extract needs (CONTRACT §2): those the changed invoices belong to,
-- looked up by id. Adapt the FROM/WHERE to your accounting system; keep the column names.
SELECT customer_id, org_id, name, parent_customer_id, language
FROM customers
WHERE customer_id IN :customer_ids
