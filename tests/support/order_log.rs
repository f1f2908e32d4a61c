//! The bundled order log (`data/electronic_sales.csv`) as orders, for the tests that
//! replay it across processes.

/// One order of the log: its lines (SKU × quantity, one unit per add-on) and whether it
/// completed (commit) or was cancelled (release).
pub struct Order {
    pub lines: Vec<(String, u64)>,
    pub completed: bool,
}

/// The first `max` orders of the bundled log.
pub fn orders(max: usize) -> Vec<Order> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/electronic_sales.csv");
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|header| header == name).unwrap();
    let (sku, quantity, status, addons) = (
        column("SKU"),
        column("Quantity"),
        column("Order Status"),
        column("Add-ons Purchased"),
    );
    reader
        .records()
        .take(max)
        .map(|record| {
            let record = record.unwrap();
            let mut lines = vec![(
                record[sku].trim().to_string(),
                record[quantity].trim().parse().unwrap(),
            )];
            for addon in record[addons].split(',').map(str::trim) {
                if !addon.is_empty() {
                    lines.push((format!("addon:{addon}"), 1));
                }
            }
            Order {
                lines,
                completed: &record[status] == "Completed",
            }
        })
        .collect()
}
