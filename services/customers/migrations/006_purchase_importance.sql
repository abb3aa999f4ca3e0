-- How important the purchase is to the customer (a segmentation attribute of
-- the profile, profile->>'purchase_importance'): low, medium or high, absent
-- when unknown. The service validates it; the database keeps to it too.
ALTER TABLE customers ADD CONSTRAINT customers_purchase_importance
    CHECK (coalesce(profile ->> 'purchase_importance', 'low') IN ('low', 'medium', 'high'));
