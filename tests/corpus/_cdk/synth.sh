#!/bin/sh
# Regenerates the cdk.out of the CDK corpus apps. Needs aws-cdk-lib, constructs
# and aws-cdk in NODE_PATH (e.g. `npm install aws-cdk-lib constructs aws-cdk`
# in a scratch directory D, then NODE_PATH=D/node_modules PATH=D/node_modules/.bin:$PATH).
# No AWS account or network is needed: the stacks are environment-agnostic.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
for pair in rest:cdk-rest-api http:cdk-http-api nested:cdk-nested-stack; do
  name=${pair%%:*}; app=${pair#*:}
  rm -rf "../$app/cdk.out"
  CDK_DISABLE_VERSION_CHECK=1 cdk synth --quiet -c corpus="$name" -o "../$app/cdk.out" >/dev/null
done
