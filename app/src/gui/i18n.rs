//! Every UI string goes through `t`, with English as the key, so a translation is one table.
//! Chinese (简体中文) is the first; strings without an entry stay English.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Lang {
    #[default]
    En,
    Zh,
}

thread_local! {
    // The UI runs on one thread; each test harness has its own.
    static LANG: Cell<Lang> = const { Cell::new(Lang::En) };
}

pub fn set_lang(l: Lang) {
    LANG.with(|c| c.set(l));
}

pub fn lang() -> Lang {
    LANG.with(|c| c.get())
}

/// The current language's text for an English UI string.
pub fn t(s: &'static str) -> &'static str {
    match lang() {
        Lang::En => s,
        Lang::Zh => zh(s).unwrap_or(s),
    }
}

fn zh(s: &str) -> Option<&'static str> {
    Some(match s {
        "Data" => "数据",
        "Label" => "标注",
        "Models" => "模型",
        "Train" => "训练",
        "Runs" => "运行记录",
        "Evaluate" => "评估",
        "File" => "文件",
        "Edit" => "编辑",
        "View" => "视图",
        "Help" => "帮助",
        "Open workspace…" => "打开工作区…",
        "New workspace…" => "新建工作区…",
        "Import dataset…" => "导入数据集…",
        "Undo" => "撤销",
        "Redo" => "重做",
        "Dark theme" => "深色主题",
        "Light theme" => "浅色主题",
        "Keyboard shortcuts" => "键盘快捷键",
        "Search" => "搜索",
        "Accept" => "接受",
        "Reject" => "拒绝",
        "Flag" => "标记",
        "Previous" => "上一条",
        "Next" => "下一条",
        "Prompt" => "提问",
        "Response" => "回答",
        "Start training" => "开始训练",
        "Cancel" => "取消",
        "No workspace open" => "未打开工作区",
        "Rows" => "行",
        "Duplicates" => "重复项",
        "Personal data" => "个人信息",
        "Token lengths" => "词元长度",
        "Split" => "划分",
        "Work area" => "工作区域",
        "Activity" => "活动",
        "Send" => "发送",
        "Stop" => "停止",
        "Records" => "逐条",
        "Pairs" => "成对比较",
        "Both bad" => "都不好",
        "Tie" => "平局",
        _ => return None,
    })
}
