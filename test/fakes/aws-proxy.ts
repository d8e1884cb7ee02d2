/**
 * A fault-injecting, call-counting proxy in front of moto. The SDK talks to it through
 * AWS_ENDPOINT_URL; it forwards every call to moto unless a fault rule answers instead. It records
 * each call by service and action, so tests can assert what was (and was not) asked of AWS.
 */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface AwsCall {
  readonly service: 'ec2' | 'elb' | 'elbv2' | 'autoscaling' | 'tagging' | 'other';
  /** When the proxy received it (ms since the epoch). */
  readonly at: number;
  readonly action: string;
  readonly params: URLSearchParams;
  readonly body: string;
}

/** What a fault rule may answer instead of moto. */
export type Fault =
  | { readonly kind: 'error'; readonly status: number; readonly code: string; readonly message?: string }
  | { readonly kind: 'hang' }
  | { readonly kind: 'delay'; readonly ms: number }
  /** Answers with this body (an XML document for the query protocols), as AWS would. */
  | { readonly kind: 'respond'; readonly status: number; readonly body: string };

export type FaultRule = (call: AwsCall) => Fault | undefined;

/**
 * What moto cannot show: a target group's deregistration delay. moto forgets a target at once; real
 * ELBv2 keeps it `draining` for the group's deregistration_delay.timeout_seconds (300 s by default).
 * This rule answers DescribeTargetHealth with the targets deregistered so far, `draining`, for as long
 * as `stillDraining()` says; then moto answers again (they are gone).
 */
export function drainingTargets(stillDraining: () => boolean = () => true): FaultRule {
  const draining = new Map<string, { id: string; port: string }[]>();
  return (call) => {
    const group = call.params.get('TargetGroupArn') ?? '';
    if (call.action === 'DeregisterTargets') {
      draining.set(group, [{ id: call.params.get('Targets.member.1.Id')!, port: call.params.get('Targets.member.1.Port')! }]);
      return undefined;
    }
    const targets = draining.get(group);
    if (call.action !== 'DescribeTargetHealth' || !targets || !stillDraining()) return undefined;
    const members = targets
      .map(
        ({ id, port }) =>
          `<member><Target><Id>${id}</Id><Port>${port}</Port></Target><TargetHealth><State>draining</State><Reason>Target.DeregistrationInProgress</Reason><Description>Target deregistration is in progress</Description></TargetHealth></member>`,
      )
      .join('');
    return {
      kind: 'respond',
      status: 200,
      body: `<DescribeTargetHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><DescribeTargetHealthResult><TargetHealthDescriptions>${members}</TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata><RequestId>drain</RequestId></ResponseMetadata></DescribeTargetHealthResponse>`,
    };
  };
}

export interface AwsProxy {
  readonly url: string;
  readonly calls: AwsCall[];
  /** Calls of one action (optionally one service), e.g. count('DeregisterTargets'). */
  count(action: string, service?: AwsCall['service']): number;
  addFault(rule: FaultRule): void;
  clearFaults(): void;
  close(): Promise<void>;
}

const QUERY_VERSIONS: Record<string, AwsCall['service']> = {
  '2016-11-15': 'ec2',
  '2012-06-01': 'elb',
  '2015-12-01': 'elbv2',
  '2011-01-01': 'autoscaling',
};

function parseCall(req: IncomingMessage, body: string): AwsCall {
  const target = req.headers['x-amz-target'];
  if (typeof target === 'string') {
    const [prefix = '', action = ''] = target.split('.');
    return { service: prefix.startsWith('ResourceGroupsTaggingAPI') ? 'tagging' : 'other', action, params: new URLSearchParams(), body, at: Date.now() };
  }
  const params = new URLSearchParams(body);
  return { service: QUERY_VERSIONS[params.get('Version') ?? ''] ?? 'other', action: params.get('Action') ?? 'Unknown', params, body, at: Date.now() };
}

function answerError(res: ServerResponse, call: AwsCall, fault: Extract<Fault, { kind: 'error' }>): void {
  const message = fault.message ?? `injected ${fault.code}`;
  if (call.service === 'tagging' || call.service === 'other') {
    res.writeHead(fault.status, { 'content-type': 'application/x-amz-json-1.1', 'x-amzn-errortype': fault.code });
    res.end(JSON.stringify({ __type: fault.code, message }));
    return;
  }
  const xml =
    call.service === 'ec2'
      ? `<Response><Errors><Error><Code>${fault.code}</Code><Message>${message}</Message></Error></Errors><RequestID>fault</RequestID></Response>`
      : `<ErrorResponse><Error><Type>${fault.status >= 500 ? 'Receiver' : 'Sender'}</Type><Code>${fault.code}</Code><Message>${message}</Message></Error><RequestId>fault</RequestId></ErrorResponse>`;
  res.writeHead(fault.status, { 'content-type': 'text/xml' });
  res.end(xml);
}

export async function startAwsProxy(upstream: string): Promise<AwsProxy> {
  const calls: AwsCall[] = [];
  let rules: FaultRule[] = [];
  const target = new URL(upstream);
  const hanging = new Set<ServerResponse>();

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', async () => {
      const body = Buffer.concat(chunks);
      const call = parseCall(req, body.toString());
      calls.push(call);
      for (const rule of rules) {
        const fault = rule(call);
        if (fault === undefined) continue;
        if (fault.kind === 'error') return answerError(res, call, fault);
        if (fault.kind === 'respond') {
          res.writeHead(fault.status, { 'content-type': 'text/xml' });
          return void res.end(fault.body);
        }
        if (fault.kind === 'hang') {
          hanging.add(res);
          res.on('close', () => hanging.delete(res));
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, fault.ms));
      }
      const forward = httpRequest(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: { ...req.headers, host: target.host } },
        (upstreamRes) => {
          res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
          upstreamRes.pipe(res);
        },
      );
      forward.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      forward.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    count: (action, service) => calls.filter((call) => call.action === action && (service === undefined || call.service === service)).length,
    addFault: (rule) => {
      rules.push(rule);
    },
    clearFaults: () => {
      rules = [];
    },
    close: async () => {
      for (const res of hanging) res.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
