-- Contacts of the customers whose actions are being sent (read at send time, R11).
SELECT contact_id, customer_id, name, email, phone, postal_address, is_billing
FROM contacts
WHERE customer_id IN :customer_ids
ORDER BY customer_id, contact_id
