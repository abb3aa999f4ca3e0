-- The order a code was redeemed for, in full: a retry of RedeemDiscount with
-- the same order_id must be the same order (amount and currency), else it is
-- refused (ALREADY_EXISTS). Redemptions made before have none (NULL): their
-- retries are compared by currency and discount amount.
ALTER TABLE discounts ADD COLUMN order_minor bigint CHECK (order_minor >= 0);
