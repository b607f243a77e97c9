/**
 * A parameter input's value as the API takes it, by the `data-param-type` the server
 * renders on each input (jobs/params.py): numbers as numbers, a checkbox as true or
 * false, text (strings, dates, emails, URLs, a select's choice) as typed. A blank input
 * is left out (`undefined`), so the server applies the default; a number input the
 * browser could not parse gives a marker the server refuses by name.
 */

export const NOT_A_NUMBER = "not a number";

/**
 * @param {{type?: string, value: string, checked?: boolean, dataset: {paramType?: string}, validity?: {badInput?: boolean}}} input
 * @returns {number|string|boolean|undefined}
 */
export function paramValue(input) {
  const type = input.dataset.paramType;
  if (type === "boolean") return Boolean(input.checked);
  if (type === "integer" || type === "number") {
    if (input.validity?.badInput) return NOT_A_NUMBER;
    return input.value.trim() === "" ? undefined : Number(input.value);
  }
  return input.value.trim() === "" ? undefined : input.value;
}
