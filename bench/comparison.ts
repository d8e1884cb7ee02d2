/**
 * The comparison section of RESULTS.md: the alternatives a user would pick instead, from their own
 * code, documentation and issues. Nothing here is measured on this machine except the
 * hasta-la-vista row, which quotes the tables above.
 */
import type { Section } from './lib/report.ts';
import { table } from './lib/stats.ts';

interface LatencyRun {
  size: number;
  poll: number;
  lastDeregisterCall: number;
  allOut: number;
}

export function comparison(sections: Section[]): string {
  const runs = ((sections.find((s) => s.id === 'latency')?.raw as { runs?: LatencyRun[] } | undefined)?.runs ?? []).filter((r) => r.poll === 2);
  const sorted = runs.map((r) => r.allOut).sort((a, b) => a - b);
  const ours =
    sorted.length > 0
      ? `measured: ${(sorted[Math.floor((sorted.length - 1) / 2)]! / 1000).toFixed(2)} s median from the notice to "all out" at the default POLL_INTERVAL 2 s (${(sorted[0]! / 1000).toFixed(2)}–${(sorted.at(-1)! / 1000).toFixed(2)} s over ${sorted.length} drains, 0 to 1000 other load balancers; table 1), plus the load balancer's own deregistration delay, which it waits out`
      : 'see table 1';
  return [
    '## Comparison with the alternatives (read, not measured)',
    '',
    'Only the hasta-la-vista row is measured on this machine. The other rows are **read** from each project\'s own code, documentation and issue tracker (links below); none of them was run here, and none of their times includes the load balancer\'s deregistration delay either.',
    '',
    table(
      ['', 'what happens when a spot notice arrives', 'AWS calls to find the node\'s load balancers', 'time until the load balancer stops sending new connections'],
      [
        [
          '**hasta-la-vista**',
          'the agent on the node sees the notice in IMDS and deregisters the instance from every cluster load balancer itself, then waits until AWS says "out"',
          'constant: 3 tag:GetResources plus a few describes of the cluster\'s own load balancers, whatever the region holds (table 2)',
          ours,
        ],
        [
          'aws-node-termination-handler, `excludeFromLoadBalancers`',
          'cordons and drains the node and labels it `node.kubernetes.io/exclude-from-external-load-balancers`; it makes no ELB call (its issue #316, "Handle ELB instance deregistration", is still open)',
          'none itself; the service controller then updates every Service load balancer',
          'read: the service controller picks the label up at its next node sync, every 100 s: "more than 50 s in average" (kubernetes/kubernetes#80250); for NLB/ALB targets managed by the AWS Load Balancer Controller, see the next row',
        ],
        [
          'AWS Load Balancer Controller',
          'removes an instance target when the node stops being suitable (the exclude label, NotReady, being deleted); ip targets when the pods\' endpoints change',
          'its own reconcile of each TargetGroupBinding (it caches targets)',
          'read: a reconcile after something else flips the node (a label from NTH, the node going NotReady or being deleted); nothing on the node waits for "out"',
        ],
        [
          'keikoproj/lifecycle-manager',
          'on an Auto Scaling lifecycle hook (via SQS, to a central deployment), deregisters the instance from load balancers, then completes the hook',
          'read: scans every target group and classic ELB of the region, then `DescribeTargetHealth` on each target group (issue #274, "Don\'t scan all target groups/ELBs, limit to just ones that are associated with the cluster"); in a region with 5000 target groups that is at least 5000 describe calls for one node, 500 s of the documented ELBv2 describe refill of 10/s (arithmetic, not measured)',
          'read: after the scan; spot interruptions reach it only through an ASG lifecycle hook (it does not read IMDS)',
        ],
      ],
    ),
    '',
    'Sources (read):',
    '',
    '- aws-node-termination-handler: the `excludeFromLoadBalancers` Helm value (`EXCLUDE_FROM_LOAD_BALANCERS`), which only labels the node; issue [aws/aws-node-termination-handler#316](https://github.com/aws/aws-node-termination-handler/issues/316) "Handle ELB instance deregistration".',
    '- Kubernetes service controller: [kubernetes/kubernetes#80250](https://github.com/kubernetes/kubernetes/issues/80250) "It takes more than 50s in average to add/remove node by ServiceController" (node list refreshed every 100 s, `nodeSyncPeriod`); also [kubernetes/cloud-provider#38](https://github.com/kubernetes/cloud-provider/issues/38). Later Kubernetes versions react to some node changes through informer events; how soon a label alone is acted on there was not measured here.',
    '- AWS Load Balancer Controller: its documentation on node selection for instance targets (the `node.kubernetes.io/exclude-from-external-load-balancers` label and node readiness) and its targets manager (kubernetes-sigs/aws-load-balancer-controller#1342).',
    '- lifecycle-manager: [keikoproj/lifecycle-manager#274](https://github.com/keikoproj/lifecycle-manager/issues/274), #212 and the scan log in #214 ("len targetgroup: 42, len elb: 1").',
    '- ELB API rate limits: [Request throttling for the ELB API](https://docs.aws.amazon.com/elasticloadbalancing/latest/userguide/elb-api-throttling.html) (token buckets per account and region; describe bucket 40, refill 10 per second; ELB and ELBv2 have separate buckets).',
  ].join('\n');
}
