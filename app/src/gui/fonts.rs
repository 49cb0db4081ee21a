//! Fonts: egui's defaults plus WenQuanYi Micro Hei (Apache-2.0, `assets/fonts/`) as the
//! fallback for both families, so Chinese, Japanese and Korean text renders everywhere (egui
//! would otherwise draw boxes, and its test harness panics on a missing glyph).

use std::sync::Arc;

static CJK: &[u8] = include_bytes!("../../../assets/fonts/wqy-microhei.ttc");

pub fn install(ctx: &egui::Context) {
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert("wqy-microhei".to_owned(), Arc::new(egui::FontData::from_static(CJK)));
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts.families.entry(family).or_default().push("wqy-microhei".to_owned());
    }
    ctx.set_fonts(fonts);
}
