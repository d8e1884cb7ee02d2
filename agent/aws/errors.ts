/** Reading AWS SDK errors: which code they carry, and whether retrying can help. */

/** The AWS error code (e.g. "Throttling", "LoadBalancerNotFound"), whichever field the SDK put it in. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const candidate = error as { Code?: unknown; code?: unknown; name?: unknown };
  for (const value of [candidate.Code, candidate.code, candidate.name]) {
    if (typeof value === 'string' && value !== 'Error') return value;
  }
  return undefined;
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    const code = errorCode(error);
    return code && !error.message.includes(code) ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}

const PERMISSION_CODES = new Set(['AccessDenied', 'AccessDeniedException', 'UnauthorizedOperation', 'UnauthorizedAccess']);

const THROTTLING_CODES = new Set(['Throttling', 'ThrottlingException', 'RequestLimitExceeded', 'TooManyRequestsException', 'RequestThrottled', 'SlowDown']);

/** The API's rate limit: everybody in the account shares it, so back off longer than for other errors. */
export function isThrottling(error: unknown): boolean {
  return THROTTLING_CODES.has(errorCode(error) ?? '');
}

export function isPermissionError(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && PERMISSION_CODES.has(code);
}

/**
 * Errors that no retry can fix: missing permissions, invalid requests. Everything else (throttling,
 * 5xx, network trouble) is worth retrying until the deadline.
 */
export function isPermanent(error: unknown): boolean {
  if (isPermissionError(error)) return true;
  const code = errorCode(error);
  return code === 'ValidationError' || code === 'InvalidParameterValue' || code === 'InvalidConfigurationRequest' || code === 'OperationNotPermitted';
}

/** A readable cause with the fix, for the status a user reads. */
export function explain(error: unknown, action: string): string {
  if (isPermissionError(error)) {
    return `${errorMessage(error)} (grant ${action} to the agent's IAM role: see the README's IAM policy)`;
  }
  return errorMessage(error);
}
