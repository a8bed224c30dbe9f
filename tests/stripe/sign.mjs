// Stripe-Signature headers made by Stripe's own library (its webhook test
// helper), for genq's billing tests (tests/tests/e2e/billing.rs).
//   node sign.mjs < requests  -> one header per request, in order, as a JSON list
// A request: {"payload": "<raw body>", "secret": "whsec_...", "timestamp": <unix s>}
import Stripe from 'stripe';

const stripe = new Stripe('sk_test_unused');
let input = '';
for await (const chunk of process.stdin) input += chunk;
const headers = JSON.parse(input).map((r) =>
  stripe.webhooks.generateTestHeaderString({
    payload: r.payload,
    secret: r.secret,
    timestamp: r.timestamp,
  }),
);
process.stdout.write(JSON.stringify(headers));
