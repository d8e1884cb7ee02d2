/** The Prometheus registry and every metric the agent exports, in one place. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { CallLog } from './aws/call-log.ts';
import type { DeregistrationDelay } from './aws/deregistration-delays.ts';
import type { DrainObserver } from './drain/drain.ts';
import type { DrainStatus } from './drain/status.ts';

export class Metrics {
  readonly registry = new Registry();

  readonly noticesSeen = new Counter({
    name: 'hasta_la_vista_notices_total',
    help: 'Termination notices seen in IMDS, by kind (each distinct notice once).',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly drains = new Counter({
    name: 'hasta_la_vista_drains_total',
    help: 'Finished drains, by trigger and outcome (deregistered, timed_out, failed, skipped).',
    labelNames: ['trigger', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly drainDuration = new Histogram({
    name: 'hasta_la_vista_drain_duration_seconds',
    help: 'Time from the start of a drain until it finished, by outcome.',
    labelNames: ['outcome'] as const,
    buckets: [0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300],
    registers: [this.registry],
  });
  readonly deregistrations = new Counter({
    name: 'hasta_la_vista_deregistrations_total',
    help: 'Load balancer memberships settled by a drain, by family and outcome (out, failed).',
    labelNames: ['family', 'outcome'] as const,
    registers: [this.registry],
  });
  private countInFlight: () => number = () => 0;
  readonly drainsInFlight: Gauge = new Gauge({
    name: 'hasta_la_vista_drains_in_flight',
    help: 'Drains running now.',
    registers: [this.registry],
    collect: (): void => this.drainsInFlight.set(this.countInFlight()),
  });
  readonly imdsErrors = new Counter({
    name: 'hasta_la_vista_imds_errors_total',
    help: 'IMDS polls that failed (timeouts, 5xx, connection errors).',
    registers: [this.registry],
  });
  readonly reRegistrations = new Counter({
    name: 'hasta_la_vista_reregistrations_caught_total',
    help: 'Memberships found again after this node was drained, and taken out again.',
    labelNames: ['family'] as const,
    registers: [this.registry],
  });
  readonly registeredBack = new Counter({
    name: 'hasta_la_vista_registered_back_total',
    help: 'Scoped deregistrations undone because a local endpoint of the Service was ready again, by family.',
    labelNames: ['family'] as const,
    registers: [this.registry],
  });
  readonly givenBack = new Counter({
    name: 'hasta_la_vista_given_back_total',
    help: 'Memberships registered again because the signs that took the whole node out passed (a canceled event, InService again), by family.',
    labelNames: ['family'] as const,
    registers: [this.registry],
  });
  readonly apiRequests = new Counter({
    name: 'hasta_la_vista_api_requests_total',
    help: 'HTTP API requests, by route and status code.',
    labelNames: ['route', 'code'] as const,
    registers: [this.registry],
  });
  readonly webhookNotices = new Counter({
    name: 'hasta_la_vista_webhook_notices_total',
    help: 'Webhook notices (WEBHOOK_URL) by event and outcome: delivered, given_up, and attempt_failed for each failed try.',
    labelNames: ['event', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly deregistrationDelay = new Gauge({
    name: 'hasta_la_vista_deregistration_delay_seconds',
    help: 'Deregistration delay (connection draining) of each of the cluster\'s load balancers, as last read with the inventory; one longer than a spot notice allows is also a warning.',
    labelNames: ['load_balancer'] as const,
    registers: [this.registry],
  });
  readonly awsCalls = new Counter({
    name: 'hasta_la_vista_aws_calls_total',
    help: 'AWS API calls made, by action.',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'hasta_la_vista_' });
  }

  /** Where the in-flight gauge reads its value at each scrape. */
  countDrainsInFlight(count: () => number): void {
    this.countInFlight = count;
  }

  /** The delays as read now: load balancers no longer in scope drop out. */
  showDeregistrationDelays(delays: readonly DeregistrationDelay[]): void {
    this.deregistrationDelay.reset();
    for (const delay of delays) this.deregistrationDelay.set({ load_balancer: delay.name }, delay.seconds);
  }

  countAwsCalls(calls: CallLog): void {
    calls.onCall((action) => this.awsCalls.inc({ action }));
  }

  /** What the drainer reports, turned into metrics. */
  drainObserver(): DrainObserver {
    return {
      loadBalancerSettled: (family, state) => this.deregistrations.inc({ family, outcome: state }),
      finished: (status: DrainStatus, durationMs: number) => {
        this.drains.inc({ trigger: status.trigger, outcome: status.state });
        this.drainDuration.observe({ outcome: status.state }, durationMs / 1000);
      },
    };
  }
}
