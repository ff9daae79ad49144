-- Every customer of the accounting system: owners of invoices, parents, languages.
SELECT customer_id, org_id, name, parent_customer_id, language
FROM customers
