#!/usr/bin/env node
// CDK app of the ESB corpus (written for ESB). Synthesised with
// `./synth.sh`; the stack to build is chosen with `-c corpus=<name>` so that
// each corpus app gets its own cdk.out holding exactly one stack (plus the
// nested stack of the nested case).
const path = require('path');
const cdk = require('aws-cdk-lib');
const lambda = require('aws-cdk-lib/aws-lambda');
const apigw = require('aws-cdk-lib/aws-apigateway');
const apigwv2 = require('aws-cdk-lib/aws-apigatewayv2');
const { HttpLambdaIntegration } = require('aws-cdk-lib/aws-apigatewayv2-integrations');

const code = () => lambda.Code.fromAsset(path.join(__dirname, 'lambda'));

function fn(scope, id, label, extra = {}) {
  return new lambda.Function(scope, id, {
    runtime: lambda.Runtime.PYTHON_3_11,
    handler: 'app.handler',
    code: code(),
    environment: { LABEL: label },
    ...extra,
  });
}

class RestStack extends cdk.Stack {
  constructor(scope, id, props) {
    super(scope, id, props);
    const proxy = fn(this, 'ProxyFunction', 'proxy');
    new apigw.LambdaRestApi(this, 'ProxyApi', { handler: proxy });

    const books = fn(this, 'BooksFunction', 'books');
    const api = new apigw.RestApi(this, 'BooksApi', {
      deployOptions: { stageName: 'v1', variables: { shelf: 'fiction' } },
      defaultCorsPreflightOptions: { allowOrigins: ['https://books.example.com'], allowMethods: ['GET', 'POST'] },
    });
    const booksResource = api.root.addResource('books');
    booksResource.addMethod('GET', new apigw.LambdaIntegration(books));
    booksResource.addMethod('POST', new apigw.LambdaIntegration(books));
    booksResource.addResource('{bookId}').addMethod('GET', new apigw.LambdaIntegration(books));
  }
}

class HttpStack extends cdk.Stack {
  constructor(scope, id, props) {
    super(scope, id, props);
    const layer = new lambda.LayerVersion(this, 'GreetingLayer', {
      code: lambda.Code.fromAsset(path.join(__dirname, 'layer')),
      compatibleRuntimes: [lambda.Runtime.PYTHON_3_11],
    });
    const items = fn(this, 'ItemsFunction', 'items');
    const layered = fn(this, 'LayeredFunction', 'layered', { handler: 'layered.handler', layers: [layer] });
    const http = new apigwv2.HttpApi(this, 'ItemsHttpApi', {
      corsPreflight: { allowOrigins: ['https://items.example.com'], allowMethods: [apigwv2.CorsHttpMethod.GET] },
    });
    http.addRoutes({ path: '/items', methods: [apigwv2.HttpMethod.GET], integration: new HttpLambdaIntegration('ItemsIntegration', items) });
    http.addRoutes({ path: '/items/{id}', methods: [apigwv2.HttpMethod.GET, apigwv2.HttpMethod.DELETE], integration: new HttpLambdaIntegration('ItemIntegration', items) });
    http.addRoutes({ path: '/greeting', methods: [apigwv2.HttpMethod.GET], integration: new HttpLambdaIntegration('GreetingIntegration', layered) });
    layered.addFunctionUrl({ authType: lambda.FunctionUrlAuthType.NONE });
  }
}

class OrdersNested extends cdk.NestedStack {
  constructor(scope, id, props) {
    super(scope, id, props);
    const orders = fn(this, 'OrdersFunction', 'orders');
    const api = new apigw.RestApi(this, 'OrdersApi', { deployOptions: { stageName: 'prod' } });
    api.root.addResource('orders').addMethod('GET', new apigw.LambdaIntegration(orders));
  }
}

class ParentStack extends cdk.Stack {
  constructor(scope, id, props) {
    super(scope, id, props);
    const front = fn(this, 'FrontFunction', 'front');
    const api = new apigw.RestApi(this, 'FrontApi', { deployOptions: { stageName: 'prod' } });
    api.root.addResource('front').addMethod('GET', new apigw.LambdaIntegration(front));
    new OrdersNested(this, 'Orders');
  }
}

const app = new cdk.App();
const which = app.node.tryGetContext('corpus');
if (which === 'rest') new RestStack(app, 'CorpusRestStack');
if (which === 'http') new HttpStack(app, 'CorpusHttpStack');
if (which === 'nested') new ParentStack(app, 'CorpusParentStack');
app.synth();
