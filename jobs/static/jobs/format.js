/**
 * How numbers, rates, durations and places in line read on the pages (en-US, the
 * pages' language). Pure functions: text in, text out.
 */

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
const tenths = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 });

/** A parameter or result value: grouped numbers, "—" for none, JSON for objects. @param {*} value */
export function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? integer.format(value) : decimal.format(value);
  if (value === null || value === undefined) return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** A count: 1,234. @param {number} n */
export function formatCount(n) {
  return integer.format(n);
}

/** "12.5/s", whole from 100 on. @param {number} rate items per second */
export function formatRate(rate) {
  return `${rate >= 100 ? integer.format(rate) : decimal.format(Number(rate.toFixed(1)))}/s`;
}

/** "13/s": the staff table's narrower column. @param {number} rate items per second */
export function formatWholeRate(rate) {
  return `${integer.format(rate)}/s`;
}

/** "34.5%" on a job card. @param {number} percent */
export function formatPercent(percent) {
  return `${decimal.format(Number(percent.toFixed(1)))}%`;
}

/** "34.0 %" in the staff table, always one decimal so the column does not jump. @param {number} percent */
export function formatPercentTenths(percent) {
  return `${tenths.format(percent)} %`;
}

/** "42 s", "3 min 5 s", "2 h 10 min". @param {number} seconds */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** @param {number} seconds */
export function formatEta(seconds) {
  return `about ${formatDuration(seconds)} left`;
}

/** @param {number} n 1-based place: 1st, 2nd, 3rd, 4th, 11th … */
export function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[n % 10] ?? "th");
  return `${n}${suffix}`;
}
